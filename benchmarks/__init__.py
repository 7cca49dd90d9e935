"""`make bench`: the service measured side by side with a bare endpoint, the tutorial's way and aiosmtplib alone."""
