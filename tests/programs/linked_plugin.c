/* The plugin that tests/programs/linked.c dlopens: it needs libm. */
#include <math.h>
#include <string.h>

double plugin_work(double x)
{
	char name[16];
	memcpy(name, "plugin", 7);
	return cos(x) + (double)strlen(name);
}
