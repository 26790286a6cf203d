"""The ingest worker: a discord.py client that keeps discord_servers/discord_users equal to Discord."""
