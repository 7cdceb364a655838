"""layersync.image"""
