"""What goes out besides mail, and what comes back: the suppression list (suppressions.py)."""
