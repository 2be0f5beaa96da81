"""Glance's interoperable image import: staging, import methods, tasks."""
