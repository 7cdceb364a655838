"""layersync.video"""
