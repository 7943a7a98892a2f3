"""Demo product catalog built from Debian's ``sweethome3d-furniture`` models."""

from demo.build import build_demo_catalog
from demo.render import Material, Mesh, load_obj, make_background, render
from demo.sweethome import (
    DEBIAN_FURNITURE_DIR,
    DemoDataMissing,
    FurnitureItem,
    parse_java_properties,
    read_furniture_catalog,
)

__all__ = [
    "DEBIAN_FURNITURE_DIR",
    "DemoDataMissing",
    "FurnitureItem",
    "Material",
    "Mesh",
    "build_demo_catalog",
    "load_obj",
    "make_background",
    "parse_java_properties",
    "read_furniture_catalog",
    "render",
]
