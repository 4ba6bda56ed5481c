"""The video front end: decoding (reader), visual encoders and their specs, the
features the adapters read, and optical flow."""
