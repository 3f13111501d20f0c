"""mutualnet_video.models"""
