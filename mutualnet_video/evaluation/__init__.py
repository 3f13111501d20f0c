"""mutualnet_video.evaluation"""
