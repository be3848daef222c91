"""GVirtuS-KAI device-plugin."""
