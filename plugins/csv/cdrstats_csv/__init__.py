"""CSV plugin: follows CSV files written by any switch, mapped by presets or config."""
