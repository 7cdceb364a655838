"""layersync.motion"""
