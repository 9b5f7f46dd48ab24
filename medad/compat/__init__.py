"""Small compatibility layers for the environments medad runs in."""
