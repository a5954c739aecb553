"""metarec: meta-learned recommendations for cold-start users."""

__version__ = "0.1.0"
