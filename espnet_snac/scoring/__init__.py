"""Objective metrics, reference points and ViSQOL for decoded speech."""
