"""The asyncio side of voiceid: the hub that runs the pure stream core for live streams."""
