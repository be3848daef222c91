"""GVirtuS-KAI labeler."""
