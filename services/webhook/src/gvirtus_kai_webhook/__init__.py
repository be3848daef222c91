"""GVirtuS-KAI webhook."""
