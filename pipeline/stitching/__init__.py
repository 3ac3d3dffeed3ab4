"""Stitching blocks: local labels, seam edges, union-find, fragments and agglomeration."""
