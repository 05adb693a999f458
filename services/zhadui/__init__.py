"""The zhadui service."""
