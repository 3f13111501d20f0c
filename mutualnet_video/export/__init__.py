"""mutualnet_video.export"""
