"""Cut the small test rasters in this folder from the real samples in ../shared/data.

Run once from the repository root (``python tests/data/make_test_data.py [SHARED_DATA]``);
the outputs are committed, so tests never need the shared folder. Every file is a crop of
a real raster (window, dtype, nodata, CRS and geotransform kept), recompressed losslessly;
see README.md for sources and licenses.
"""

from __future__ import annotations

import sys
from pathlib import Path

from osgeo import gdal

gdal.UseExceptions()

HERE = Path(__file__).resolve().parent
# name -> (source under the shared data folder, (x offset, y offset, width, height), format)
CROPS = {
    # Landsat 8 uint16, 0-valued fill (about 36% here, the scene's corner) and NO nodata set.
    "landsat8_corner.tif": ("landsat8/LC08_L1TP_224078_20200518_20200518_01_RT.TIF",
                            (0, 0, 256, 256), "GTiff"),
    # Inland window that holds three of the four reference polygons (water, crop, tree):
    # the georeferenced-window training layout (the corner above lies outside them).
    "landsat8_polygons_window.tif": ("landsat8/LC08_L1TP_224078_20200518_20200518_01_RT.TIF",
                                     (656, 596, 224, 256), "GTiff"),
    # Entirely fill: an all-nodata raster once --nodata 0 is given.
    "landsat8_fill.tif": ("landsat8/LC08_L1TP_224078_20200518_20200518_01_RT.TIF",
                          (1960, 0, 64, 64), "GTiff"),
    # Landsat 7 RGB uint8 with nodata=0 and a black collar (about 31% here).
    "rgb_byte_collar.tif": ("rasterio/RGB.byte.tif", (0, 200, 256, 256), "GTiff"),
    # NAIP 4 bands (R, G, B, NIR) uint8, nodata=0, 5 m: the seam test's imagery.
    "naip_4band.tif": ("naip/m_4709963_se_14_1_20200831.tif", (300, 200, 384, 384), "GTiff"),
    # SpaceNet-6: multispectral float64 at 1 m and panchromatic uint16 at 0.5 m over the
    # same ground (both grids start at the same corner), for multi-input alignment.
    "sn6_ms_1m.tif": ("sn6_rotterdam/ms1.tif", (100, 100, 64, 64), "GTiff"),
    "sn6_pan_05m.tif": ("sn6_rotterdam/pan1.tif", (200, 200, 128, 128), "GTiff"),
    # Complex-valued SAR (CFloat32): must be refused.
    "sn6_sar_complex.tif": ("sn6_rotterdam/sar_hh.tif", (0, 0, 32, 32), "GTiff"),
    # An aerial photo without any georeferencing (JPEG source, stored as PNG).
    "dubai_no_georef.png": ("dubai/images/tile2_image_part_005.jpg", (100, 100, 160, 128),
                            "PNG"),
}
# The image/mask folder layout for training tests: 128 x 128 crops of real Dubai image and
# label pairs from three scenes (scene 1 is the held-out one). Labels are the set's RGB
# colour coding, stored both as RGB and as paletted PNG (as the source has both).
for _scene, _part in (("tile1", "002"), ("tile2", "001"), ("tile3", "001"), ("tile4", "001")):
    _stem = f"{_scene}_image_part_{_part}"
    CROPS[f"dubai_folder/images/{_stem}.png"] = (f"dubai/images/{_stem}.jpg",
                                                 (100, 100, 128, 128), "PNG")
    CROPS[f"dubai_folder/masks/{_stem}.png"] = (f"dubai/masks/{_stem}.png",
                                                (100, 100, 128, 128), "PNG")

# LoveDA's published layout for training tests: 64 x 64 crops of two real (rural) LoveDA
# tiles and their raw-coded masks. The test split has images only, as published.
for _split, _source, _x, _y in (("Train", 0, 64, 672), ("Train", 1, 32, 512),
                                ("Val", 1, 288, 576), ("Test", 0, 160, 0)):
    _name = f"{_source}_{_x}_{_y}.png"
    CROPS[f"loveda/{_split}/Rural/images_png/{_name}"] = (f"loveda/images/{_source}.png",
                                                          (_x, _y, 64, 64), "PNG")
    if _split != "Test":
        CROPS[f"loveda/{_split}/Rural/masks_png/{_name}"] = (f"loveda/masks/{_source}.png",
                                                             (_x, _y, 64, 64), "PNG")


def main(shared: Path) -> None:
    for name, (source, window, driver) in CROPS.items():
        options = ["COMPRESS=DEFLATE", "PREDICTOR=2"] if driver == "GTiff" else []
        if source.endswith("sar_hh.tif"):
            options = ["COMPRESS=DEFLATE"]  # no horizontal predictor for complex types
        (HERE / name).parent.mkdir(parents=True, exist_ok=True)
        gdal.Translate(
            str(HERE / name), str(shared / source), srcWin=list(window), format=driver,
            creationOptions=options,
        )
        print(f"wrote {name} from {source} window {window}")
    for stray in HERE.glob("**/*.png.aux.xml"):
        stray.unlink()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[2] / "shared" / "data")
