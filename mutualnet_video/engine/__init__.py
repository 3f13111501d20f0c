"""mutualnet_video.engine"""
