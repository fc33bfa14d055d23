"""Raster input and output for segmentation: opening and checking inputs, aligning several
onto one grid, windowed reads with nodata masks and normalisation, block-wise GeoTIFF
writing under temporary names, and areas on the raster's grid."""
