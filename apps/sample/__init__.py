"""The sample partner app "Hotpot Finder"."""
