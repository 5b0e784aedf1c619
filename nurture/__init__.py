"""nurture: email nurture sequences that advance each person only after their last micro-yes."""

__version__ = "0.1.0"
