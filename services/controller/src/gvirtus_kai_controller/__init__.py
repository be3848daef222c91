"""GVirtuS-KAI placement controller."""
