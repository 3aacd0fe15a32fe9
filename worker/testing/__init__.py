"""Public test kit: a MongoDB replica-set emulator, event factories and pytest helpers."""
