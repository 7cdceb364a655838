def main():
    raise SystemExit("layersync: no commands yet")
