"""The codegen stage: the NumPy implementations (CPU backend and reference semantics) and,
later, the Triton emitters."""
