"""layersync.audio"""
