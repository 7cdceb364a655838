"""layersync.metrics"""
