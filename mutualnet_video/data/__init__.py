"""mutualnet_video.data"""
