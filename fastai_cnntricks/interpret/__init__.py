"interpret wing."
