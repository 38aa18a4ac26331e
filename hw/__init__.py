"""Amaranth RTL of one gradsync node and of the N-node fabric (see DESIGN.md, "One node")."""
