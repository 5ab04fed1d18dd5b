"""Pure decision code: autoscaling, placement and trial planning. No I/O, no asyncio; time is passed in."""
