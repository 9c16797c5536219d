"""Django-free whole-slide image tools: slides, tissue, patches, barcodes, contours."""
