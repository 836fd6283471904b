"augment wing."
