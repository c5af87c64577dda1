"""Built-in datasets: one module per family in this folder, found automatically.

- `digits.py`: scikit-learn's 8x8 digits, shipped with the package (no download);
- `torchvision.py`: MNIST, Fashion-MNIST, SVHN, CIFAR-10 / -100 read through torchvision from a
  local root (`TorchvisionDataset`, one short subclass each);
- `folders.py`: image-folder trees (`imagefolder`, the ImageNet subsets, Tiny ImageNet) and the
  image-file reader `from_files` shares.

Each module defines `Dataset` subclasses (`ddbench.data`) decorated with `@DATASETS.register`.
`DATASETS` imports every non-underscore module here on its first lookup (`Registry(builtins=)`),
not when `ddbench.data` is imported: these modules import `ddbench.data`, so importing them from
its top would be a cycle. A new family is one new file here; a new member of a family is a
subclass in its file.
"""
