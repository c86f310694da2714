"""One training trial and the sweep that schedules many of them.

Knows nothing of HTML: it produces metrics and stores them.
"""
