"""What a user asks for: workflow schema, YAML loading, GeoJSON regions. Uses maps, search, geo."""
