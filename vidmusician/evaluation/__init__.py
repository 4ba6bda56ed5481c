"""Evaluation: music and visual beats, rhythm metrics, text-music and audio-KL
scores, the evaluation of a folder of clips, and its plots."""
