"""Fashion Scenes: an offline multi-label benchmark composed from real photographs, in COCO format.

MS-COCO and VOC need a download; this benchmark is built on any machine from two sources that install
offline, and it keeps the structure the SRDL paper's motivation (§1, Fig. 1) depends on: several objects per
image, small and occluded objects, label co-occurrence with groups, occasional unusual combinations and rare
categories.

Sources (all real photographs, all freely licensed)
    * Objects: Fashion-MNIST (Zalando SE, MIT licence): 70,000 28×28 grayscale product photos of 10 classes.
      Debian/Ubuntu: ``apt-get install dataset-fashion-mnist`` puts the four ``*-ubyte.gz`` files in
      ``/usr/share/datasets/fashion-mnist``; elsewhere download them from
      https://github.com/zalandoresearch/fashion-mnist and set ``FASHION_MNIST_DIR`` (or pass ``fmnist_dir``).
    * Backgrounds: the colour photographs shipped inside scikit-image (no download), see ``BACKGROUNDS``:
      astronaut (NASA, public domain), coffee (CC0, Rachel Michetti), chelsea (CC0, Stefan van der Walt),
      rocket (SpaceX, public domain), hubble_deep_field (NASA, public domain), immunohistochemistry (CMMI,
      "no known copyright restrictions"). The Middlebury stereo pair (no stated licence) and the retina (large
      black corners) are left out on purpose.

Categories
    The 10 Fashion-MNIST classes, category ids 1..10 in Fashion-MNIST label order, named with real English
    words so label-name word vectors exist for all of them (all are GloVe-6B tokens; ``'ankle boot'`` is two
    tokens): ``FASHION_SCENES_CLASSES``. "Trouser" and "T-shirt/top" are renamed ``'trousers'`` and
    ``'t-shirt'`` (no slash).

Label model (``LABEL_MODEL``; sampled without rendering by :func:`sample_label_sets`)
    Each image first draws a scene type. Four are outfits whose members appear together most of the time:
    casual (t-shirt, trousers, sneaker), winter (coat, pullover, ankle boot), summer (dress, sandal, rarely a
    bag) and office (shirt, trousers, ankle boot, bag; only 2.5 % of images). The fifth, ``mixed`` (8 %),
    draws 2–3 common categories uniformly: the *occasional unusual combinations*. On top, every common
    category outside the outfit joins with probability 3 % (noise co-occurrence); the two rare categories only
    with 0.2 %. ``'shirt'`` and ``'bag'`` are the rare categories (about 2–3 % of images each); shirt is also
    the class Fashion-MNIST classifiers confuse most (with t-shirt, pullover, coat), so recognising it profits
    from its context (trousers + ankle boot), as the paper's traffic-light example does. Shoes come as a
    pair with probability 40 %, other categories twice with 15 %; at most ``max_objects`` objects per image.

Rendering (:func:`render_scene`, one ``numpy.random.Generator`` per image, so images can be rendered in any
order or in parallel and still come out identical)
    * Background: one of the photos, random crop (side 30–100 % of the photo's short side, aspect ratio
      e^±0.25), random horizontal flip, brightness ×U(0.8, 1.1), bilinear resize to ``image_size``².
    * Object: a Fashion-MNIST item cropped to its own extent, its longer side scaled to a log-uniform
      fraction of the image side in ``scale_range`` (default 0.16–0.6: objects cover from under 1 % to about
      a third of the image, about a quarter are *small*, under 3 % of the area), random horizontal flip and
      colour tint (30 % stay gray). The item's intensity is its alpha mask, ramped so that intensities
      ≥ 48/255 are opaque and the black product-photo background is fully transparent (sandal straps and bag
      handles show the background through their gaps).
    * Occlusion: objects are pasted in random order, later ones over earlier ones. A position is accepted
      only if every earlier object keeps at least ``min_visible`` of its alpha mass visible (up to
      ``placement_tries`` random positions); an object with no acceptable position is dropped, so the labels
      written are always exactly the objects visible in the image. Every image keeps at least one object.

Splits and leakage
    Train and val scenes use items from Fashion-MNIST's train split, partitioned by a seeded permutation
    into disjoint pools (5/6 train, 1/6 val); test scenes use Fashion-MNIST's test split only, so no item's
    pixels appear in two splits. Within a split items are drawn per class without replacement, reshuffling
    only when a class's pool is exhausted (the ``full`` preset reuses some items at new scales and tints).
    Each annotation records its source item as ``fmnist_index`` (an index into that Fashion-MNIST split).

Output (``root`` layout)::

    root/annotations/{train,val,test}.json   COCO instances format (see below)
    root/images/{train,val,test}/000000.jpg  JPEG, quality ``jpeg_quality`` (default 90)
    root/stats.json                          label frequencies, co-occurrence, objects/image, object sizes
    root/cooccurrence.png                    P(column | row) on the train split + label frequencies

    COCO JSON: ``images`` (id from 1, file_name relative to ``info.image_dir``, width, height, license),
    ``annotations`` (id from 1, image_id, category_id, bbox = [x, y, w, h] of the pasted item's opaque extent
    (amodal, in pixels), area = visible opaque pixel count, iscrowd = 0, plus the extra keys
    ``visible_fraction`` and ``fmnist_index``), ``categories`` (id, name, supercategory 'fashion', in id
    order), ``licenses`` and ``info`` (generator version, seed, preset, every parameter, the label model,
    the sources with their licences and the software versions). No segmentation polygons are written.

Determinism and reuse
    Everything derives from ``seed`` through ``numpy.random.default_rng`` streams keyed by (seed, purpose,
    split[, image]). The same seed, parameters and software stack (numpy, Pillow, scikit-image, matplotlib)
    give byte-identical files; build time is only logged, never written. A build goes into a temporary
    sibling directory that is renamed onto ``root`` only when complete, so an interrupted build never looks
    complete. An existing ``root`` is reused only if its ``stats.json`` records the same generator version,
    seed and parameters and every annotation file and image is there with the recorded total size;
    otherwise it is rebuilt when it is an incomplete build of this generator (or ``overwrite=True``), and
    left alone with an error naming the mismatch when it is a complete build with other parameters or an
    unrelated directory.

Presets (``PRESETS``): ``tiny`` (12/12/12 images at 64 px, tests), ``quick`` (1,500/300/500 at 128 px, a
CPU model learns it in minutes), ``full`` (20,000/2,000/5,000 at 224 px, for a GPU). Any parameter can be
overridden by keyword.

Command line (from the repository root): ``python -m benchmarks.fashion_scenes --root DIR [--preset quick|full|tiny]
[--seed N]``.

Modules: :mod:`.sources` (constants, Fashion-MNIST, background photos, parameters), :mod:`.scenes` (label sets,
item pools, rendering), :mod:`.build` (writing, statistics, reuse, command line).
"""
from .build import build_fashion_scenes, cooccurrence_counts, format_stats_summary, main
from .scenes import render_scene, sample_label_sets, scene_label_sets
from .sources import (BACKGROUNDS, FASHION_MNIST_INSTALL_HINT, FASHION_SCENES_CLASSES, FASHION_SCENES_VERSION,
                      LABEL_MODEL, PRESETS, SPLITS, load_backgrounds, load_fashion_mnist, resolve_params)

__all__ = [
    'FASHION_SCENES_CLASSES', 'FASHION_SCENES_VERSION', 'PRESETS', 'LABEL_MODEL', 'BACKGROUNDS', 'SPLITS',
    'FASHION_MNIST_INSTALL_HINT', 'load_fashion_mnist', 'load_backgrounds', 'resolve_params',
    'sample_label_sets', 'scene_label_sets', 'render_scene', 'build_fashion_scenes', 'cooccurrence_counts',
    'format_stats_summary', 'main',
]
