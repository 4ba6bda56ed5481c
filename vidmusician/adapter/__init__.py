"""The adapters: their math (layers), the video they read (context), the semantic
encoders (linear, T5 with LoRA), and their wiring into audiocraft's LM."""
