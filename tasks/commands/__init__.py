"""The commands beside `segment`: evaluate, phantom, train, view, estimate, clean, import."""
