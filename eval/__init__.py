"""Evaluation: generation metrics (FID, sFID, IS, precision, recall), reconstruction
metrics (PSNR, SSIM, LPIPS, rFID), offline weight resolution, the leaderboard table.

Every result records what it was computed against: the reference (batch file or
image set and its statistics), the feature extractor's weights (path, source, SHA-1)
and the resize convention. Metrics the available weights cannot give are reported as
unavailable with the reason, never as a number.

May import: data.
"""
