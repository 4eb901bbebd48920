"""Exporters from the scene folder to other tools' formats; each names the convention it converts to."""
