"""Business logic of rayscribe: pure Python, no Ray and no HTTP framework."""
