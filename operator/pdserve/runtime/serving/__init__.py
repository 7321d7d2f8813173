"""The worker's HTTP side: the aiohttp app, the OpenAI endpoints, tool calls, metrics, /load."""
