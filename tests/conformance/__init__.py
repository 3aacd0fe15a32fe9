"""Conformance suite: MongoDB 7 replica-set behaviour the emulator must match."""
