"""Images as small data URIs, for tables with an image column (`st.column_config.ImageColumn`)."""
import base64
import io

import numpy as np
from PIL import Image

THUMBNAIL_PX = 96


def thumbnail_uri(image: np.ndarray, size: int = THUMBNAIL_PX) -> str:
    """A JPEG data URI of `image` (H, W, 3) uint8, shrunk to at most `size` px a side."""
    picture = Image.fromarray(np.asarray(image, dtype="uint8"))
    picture.thumbnail((size, size))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
