"""GVirtuS-KAI backend agent: measures the GVirtuS backend from inside its pod."""
