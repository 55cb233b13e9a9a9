/* main.c - placeholder until the daemon lands. */
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "--version") == 0) {
		printf("throttlefs %s\n", THROTTLEFS_VERSION);
		return 0;
	}
	fprintf(stderr, "throttlefs: not implemented yet\n");
	return 2;
}
